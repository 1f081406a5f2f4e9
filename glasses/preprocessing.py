"""The preprocessing contract, shared by training and serving (the only place images become tensors).

    bytes / path / PIL image
      -> decode strictly (whole file read, format and pixel-count checked, first frame only)
      -> apply EXIF orientation
      -> convert to RGB (one rule per PIL mode, see `to_rgb`)
      -> framing "face" only (a version's metadata `framing`): crop to the training photos' framing
         around the detected face, or refuse with NoFaceError (glasses/faces.py); "none": unchanged
      -> resize to size x size with PIL's BILINEAR filter (antialiased when shrinking), aspect ratio
         not kept (as the paper's `image_dataset_from_directory`)
      -> uint8 array (size, size, 3)            <- what the training cache stores
      -> float32 array in [0, 1] = uint8 / 255  <- what the model sees (`rescale`)

Training caches the uint8 stage and applies `rescale` (or its bit-identical TensorFlow twin
`tf.cast(x, tf.float32) / 255.0`) when batching; serving calls `preprocess` on each upload. Any change
to this module that changes pixels must bump `PREPROCESSING_VERSION` (it keys the training cache and
is recorded in every registered model's metadata).

Multi-frame images (animated GIF/WebP, multi-page TIFF) are accepted: the first frame is used.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from glasses.config import ALLOWED_SIZES, FACE_MIN_SCORE, FRAMINGS, IMAGE_SIZE, MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from glasses.faces import Face

PREPROCESSING_VERSION = "pil-bilinear-rgb-white-v1"
RESAMPLE = Image.Resampling.BILINEAR
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"})

# Set deliberately: we check the pixel count ourselves before decoding (see `decode`); PIL's own
# guard (warning at 1x, error at 2x) stays as a second line of defence at the same limit.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

ImageSource = Union[bytes, bytearray, memoryview, str, Path, Image.Image]


class ImageDecodeError(ValueError):
    """An upload or file that is not a usable image; the message says why, for the client."""


class NoFaceError(ImageDecodeError):
    """A decodable image in which a framing="face" version finds no face."""


def decode(data: bytes | bytearray | memoryview | str | Path) -> Image.Image:
    """Decode image bytes (or a file path) strictly into a fully loaded PIL image (first frame).

    Raises ImageDecodeError for empty input, non-image or unsupported formats, images over
    MAX_IMAGE_PIXELS, and truncated or corrupt files.
    """
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    data = bytes(data)
    if not data:
        raise ImageDecodeError("empty file: zero bytes received")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not a recognised image: expected JPEG, PNG, WebP, BMP, GIF or TIFF bytes"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"image has too many pixels (limit {MAX_IMAGE_PIXELS:,})") from None
    except Exception as exc:  # PIL raises many types for garbage headers
        raise ImageDecodeError(f"corrupt image header: {exc}") from None
    if img.format not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"unsupported image format {img.format!r}; use JPEG, PNG, WebP, BMP, GIF or TIFF")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {MAX_IMAGE_PIXELS:,}"
        )
    try:
        img.seek(0)
        img.load()
    except Exception as exc:  # truncated data, broken zlib/JPEG streams, bad TIFF strips...
        raise ImageDecodeError(f"truncated or corrupt {img.format} image: {exc}") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB with one rule per mode family.

    - alpha (RGBA, LA, PA, P/RGB/L with a transparency key): alpha-composited onto white;
    - 16/32-bit integer (I;16*, I): scaled to 8 bits (x / 257), float (F): clipped to [0, 255];
    - 1, L, P, CMYK, YCbCr, LAB, HSV, RGB: PIL's own conversion to RGB (grey replicated to 3 channels).
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")


def load_rgb(source: ImageSource) -> Image.Image:
    """Contract's first steps: decode strictly (unless given a PIL image), EXIF orientation, RGB."""
    if isinstance(source, Image.Image):
        img = ImageOps.exif_transpose(source) or source  # a copy: the caller's image stays as it was
    else:
        img = decode(source)
        ImageOps.exif_transpose(img, in_place=True)  # our own image: no copy of every pixel
    return to_rgb(img)


def framed(img: Image.Image, framing: str = "none") -> tuple[Image.Image, "Face | None"]:
    """The optional framing step on an RGB image: "none" keeps it; "face" crops it to the training
    framing around the detected face (glasses/faces.py) and raises NoFaceError when there is none."""
    if framing == "none":
        return img, None
    if framing != "face":
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    from glasses import faces

    face = faces.find_face(img)
    if face is None:
        raise NoFaceError("no face found: the photo must show one face, eyes visible "
                          f"(detector confidence below {FACE_MIN_SCORE})")
    return faces.frame(img, face), face


def framed_uint8(source: ImageSource, size: int = IMAGE_SIZE, framing: str = "none") -> tuple[np.ndarray, "Face | None"]:
    """Contract up to the cacheable stage, and the face the framing found (None for framing "none")."""
    if size not in ALLOWED_SIZES:
        raise ValueError(f"image size must be one of {ALLOWED_SIZES}, got {size}")
    img, face = framed(load_rgb(source), framing)
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8).copy(), face


def to_uint8(source: ImageSource, size: int = IMAGE_SIZE, framing: str = "none") -> np.ndarray:
    """Contract up to the cacheable stage: image -> uint8 array (size, size, 3)."""
    return framed_uint8(source, size, framing)[0]


def framed_or_whole(source: ImageSource, size: int = IMAGE_SIZE, framing: str = "none") -> tuple[np.ndarray, bool]:
    """Training's and evaluation's rule: (uint8 pixels, whether a face was missing); a photo in which
    framing "face" finds no face is kept whole instead of refused (the service refuses it)."""
    img = load_rgb(source)
    try:
        return framed_uint8(img, size, framing)[0], False
    except NoFaceError:
        return framed_uint8(img, size)[0], True


def rescale(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (x / 255, correctly rounded like tf's float32 division)."""
    return pixels.astype(np.float32) / np.float32(255.0)


def preprocess(source: ImageSource, size: int = IMAGE_SIZE) -> np.ndarray:
    """The whole contract: image -> float32 array (size, size, 3) in [0, 1]."""
    return rescale(to_uint8(source, size))
