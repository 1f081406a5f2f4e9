"""Why a verdict: an occlusion map of the served classifier, drawn over the uploaded photo.

    upload bytes --decode_framed--> uint8 (S, S, 3)       the same strict contract (and 4xx) as /predict
    -> copies of it with one square patch (EXPLAIN_PATCH * S, slid by EXPLAIN_STRIDE * S) filled with
       the photo's mean colour
    -> P(glasses) of every copy from the served classifier, EXPLAIN_CHUNK copies per call
    -> evidence of each position = how much hiding it moves the logit away from the verdict
       (glasses: logit(p) - logit(p_hidden); no_glasses: the opposite), negatives clipped to 0
    -> heat (S, S): evidence averaged over the patches covering each pixel, scaled to [0, 1]
    -> resized onto the EXIF-oriented photo, colour-mapped and alpha-blended -> PNG

Occlusion needs only forward passes, so it explains whatever runtime serves the model (any callable
uint8 (N, S, S, 3) -> P(glasses) (N,)); it runs beside the adaptive batching, never inside it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageFilter

from glasses import faces, preprocessing
from glasses.config import CLASS_NAMES, EXPLAIN_CHUNK, EXPLAIN_MAX_SIDE, EXPLAIN_PATCH, EXPLAIN_STRIDE
from glasses.faces import Face
from service.inference import decode_framed

Predict = Callable[[np.ndarray], np.ndarray]
LOGIT_CLIP = 1e-6  # P(glasses) is clipped to [1e-6, 1 - 1e-6] before the logit (saturated models)
# colour map anchors (cold -> hot), for heat 0, 0.25, 0.5, 0.75, 1
HEAT_COLOURS = np.array([[0, 0, 80], [90, 20, 160], [220, 40, 90], [255, 150, 20], [255, 255, 180]], np.float64)


@dataclass(frozen=True)
class Explanation:
    """One explained upload: its verdict and where the evidence for it lies."""

    probability: float
    verdict: str
    heat: np.ndarray  # float32 (S, S) in [0, 1]; all zero when no patch moves the verdict's logit
    peak: tuple[float, float]  # (x, y) of the hottest pixel, as fractions of width and height
    max_evidence: float  # the largest logit change one patch caused (0: nothing the patch hides matters)
    positions: int  # occluded copies scored

    def as_json(self, threshold: float, tag: str) -> dict:
        """The JSON variant of /explain (without the image)."""
        return {"verdict": self.verdict, "probability": self.probability, "threshold": threshold, "model": tag,
                "method": "occlusion", "peak": {"x": self.peak[0], "y": self.peak[1]},
                "max_evidence": self.max_evidence, "positions": self.positions,
                "heatmap": _coarse(self.heat).round(3).tolist()}


def patch_grid(size: int) -> tuple[int, list[int]]:
    """(patch side, top-left offsets along one axis) for an S x S input; the last patch ends at S."""
    patch = max(2, round(size * EXPLAIN_PATCH))
    stride = max(1, round(size * EXPLAIN_STRIDE))
    offsets = list(range(0, size - patch + 1, stride))
    if offsets[-1] != size - patch:
        offsets.append(size - patch)
    return patch, offsets


def occluded(pixels: np.ndarray, patch: int, corners: list[tuple[int, int]]) -> np.ndarray:
    """Copies of `pixels` (S, S, 3) with a patch at each (top, left) corner filled with the mean colour."""
    fill = pixels.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    batch = np.repeat(pixels[np.newaxis], len(corners), axis=0)
    for i, (top, left) in enumerate(corners):
        batch[i, top:top + patch, left:left + patch] = fill
    return batch


def _chunks(items: list, n: int) -> Iterator[list]:
    for start in range(0, len(items), n):
        yield items[start:start + n]


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def occlusion_map(predict: Predict, pixels: np.ndarray, threshold: float) -> Explanation:
    """Explain the verdict of `predict` on one uint8 (S, S, 3) image by occluding it patch by patch."""
    size = pixels.shape[0]
    probability = float(predict(pixels[np.newaxis])[0])
    glasses = probability >= threshold
    patch, offsets = patch_grid(size)
    corners = [(top, left) for top in offsets for left in offsets]
    hidden = np.concatenate([predict(occluded(pixels, patch, chunk)) for chunk in _chunks(corners, EXPLAIN_CHUNK)])
    change = _logit(probability) - _logit(hidden)
    evidence = np.clip(change if glasses else -change, 0.0, None)
    total = np.zeros((size, size))
    cover = np.zeros((size, size))
    for (top, left), e in zip(corners, evidence):
        total[top:top + patch, left:left + patch] += e
        cover[top:top + patch, left:left + patch] += 1
    heat = total / cover
    top_value = float(heat.max())
    heat = (heat / top_value if top_value > 0 else heat).astype(np.float32)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return Explanation(probability=probability, verdict=CLASS_NAMES[1] if glasses else CLASS_NAMES[0], heat=heat,
                       peak=(float((x + 0.5) / size), float((y + 0.5) / size)), max_evidence=float(evidence.max()),
                       positions=len(corners))


def _coarse(heat: np.ndarray, cells: int = 16) -> np.ndarray:
    """The heat map averaged into cells x cells blocks (what the JSON variant carries)."""
    size = heat.shape[0] - heat.shape[0] % cells
    return heat[:size, :size].reshape(cells, size // cells, cells, size // cells).mean(axis=(1, 3))


def colour_map(heat: np.ndarray) -> np.ndarray:
    """float heat (H, W) in [0, 1] -> uint8 RGB (H, W, 3) along HEAT_COLOURS."""
    stops = np.linspace(0.0, 1.0, len(HEAT_COLOURS))
    flat = np.clip(heat.reshape(-1), 0.0, 1.0)
    rgb = np.stack([np.interp(flat, stops, HEAT_COLOURS[:, c]) for c in range(3)], axis=-1)
    return rgb.reshape(*heat.shape, 3).round().astype(np.uint8)


def oriented_photo(data: bytes, max_side: int = EXPLAIN_MAX_SIDE, face: Face | None = None) -> Image.Image:
    """The upload as a person sees it (first frame, EXIF orientation, RGB; its face frame when `face`
    is given), at most max_side pixels."""
    img = preprocessing.load_rgb(data)
    if face is not None:
        img = faces.frame(img, face)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         preprocessing.RESAMPLE)
    return img


def overlay_png(photo: Image.Image, heat: np.ndarray) -> bytes:
    """The photo with the heat drawn over it (smoothed; opacity grows with heat), as PNG bytes."""
    heat_img = Image.fromarray((heat * 255).round().astype(np.uint8), "L").resize(photo.size, Image.Resampling.BICUBIC)
    radius = max(1.0, EXPLAIN_STRIDE * max(photo.size))
    h = np.asarray(heat_img.filter(ImageFilter.GaussianBlur(radius)), np.float64) / 255.0
    h = h / h.max() if h.max() > 0 else h
    alpha = (0.7 * h ** 1.5)[..., np.newaxis]
    blended = np.asarray(photo, np.float64) * (1 - alpha) + colour_map(h).astype(np.float64) * alpha
    buf = io.BytesIO()
    Image.fromarray(blended.round().astype(np.uint8), "RGB").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def explain_upload(data: bytes, predict: Predict, size: int, threshold: float,
                   framing: str = "none") -> tuple[Explanation, bytes]:
    """Upload bytes -> (its explanation, the overlay PNG over what the model saw: the photo, or its
    face frame for framing "face"); UploadError (4xx) for a bad upload."""
    pixels, face = decode_framed(data, size, framing)  # strict: every fault is raised here, as on /predict
    explanation = occlusion_map(predict, pixels, threshold)
    return explanation, overlay_png(oriented_photo(data, face=face), explanation.heat)
