"""Find the face, then frame the photo as the training photos are framed (a version's `framing="face"`).

    RGB photo --letterbox to a square, 128 px, [-1, 1]--> BlazeFace short range (LiteRT)
      --896 anchors: best score, boxes overlapping it averaged by score--> Face(box, score) or None
      (a miss is looked at once more inside a plain border: faces that fill the frame)
    photo + Face --crop a frame around the box (edge pixels repeated past the photo's border)--> the
      photo as training saw one: the box at FACE_FRAME_BOX_W x FACE_FRAME_BOX_H of the frame, its
      centre at FACE_FRAME_CENTRE

So a face small in a large photo, off-centre, or filling the whole frame reaches the classifier at
the scale and place it learnt from. The detector file comes from the `mediapipe` wheel at set-up
(glasses/config.py); mediapipe itself is never installed or imported. One interpreter per thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from glasses.config import (
    FACE_DETECTOR_FILE,
    FACE_FRAME_BOX_H,
    FACE_FRAME_BOX_W,
    FACE_FRAME_CENTRE,
    FACE_MIN_SCORE,
)

DETECTOR_SIZE = 128
OVERLAP_IOU = 0.3  # boxes overlapping the best one this much are averaged into it (MediaPipe's rule)
MIN_LOGIT = float(np.log(FACE_MIN_SCORE / (1.0 - FACE_MIN_SCORE)))
RETRY_BORDER = 0.25  # find_face's second look at a miss (what it recovers: models/README.md)
_local = threading.local()


class DetectorMissing(RuntimeError):
    """The face detector file is not on disk (set-up extracts it)."""


@dataclass(frozen=True)
class Face:
    """A detected face: its box (x0, y0, x1, y1) in the photo's pixels, and the detector's score."""

    box: tuple[float, float, float, float]
    score: float

    def as_json(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4)}


def _anchors() -> np.ndarray:
    """Anchor centres (896, 2) of BlazeFace short range: 2 per cell at stride 8, 6 per cell at stride 16."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = DETECTOR_SIZE // stride
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(centres, np.float32)


class FaceDetector:
    """BlazeFace short range on LiteRT, one thread (its cost per photo: docs/loadtests.md)."""

    def __init__(self) -> None:
        if not FACE_DETECTOR_FILE.exists():
            raise DetectorMissing(f"face detector not found at {FACE_DETECTOR_FILE}: run scripts/setup.sh "
                                  "(it extracts it with scripts/fetch_face_detector.py)")
        from ai_edge_litert.interpreter import Interpreter

        from glasses.quiet import muted_stderr

        with muted_stderr():  # LiteRT announces its XNNPACK delegate on stderr
            self._it = Interpreter(model_path=str(FACE_DETECTOR_FILE), num_threads=1)
            self._it.allocate_tensors()
        self._input = self._it.get_input_details()[0]["index"]
        outputs = sorted(self._it.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        self._boxes, self._scores = outputs[0]["index"], outputs[1]["index"]
        self._anchors = _anchors()

    def detect(self, img: Image.Image) -> Face | None:
        """The most confident face in an RGB photo, or None below FACE_MIN_SCORE."""
        w, h = img.size
        side = max(w, h)
        ox, oy = (side - w) // 2, (side - h) // 2
        square = img
        if w != h:
            square = Image.new("RGB", (side, side))
            square.paste(img, (ox, oy))
        x = np.asarray(square.resize((DETECTOR_SIZE, DETECTOR_SIZE), Image.Resampling.BILINEAR), np.float32)
        self._it.set_tensor(self._input, (x / 127.5 - 1.0)[np.newaxis])
        self._it.invoke()
        logits = self._it.get_tensor(self._scores)[0, :, 0]
        sure = np.flatnonzero(logits >= MIN_LOGIT)  # score >= FACE_MIN_SCORE, without 896 sigmoids
        if sure.size == 0:
            return None
        raw = self._it.get_tensor(self._boxes)[0, sure, :4]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[sure], -80.0, 80.0)))
        centre = raw[:, :2] / DETECTOR_SIZE + self._anchors[sure]
        half = raw[:, 2:4] / DETECTOR_SIZE / 2.0
        boxes = np.concatenate([centre - half, centre + half], axis=1)  # in the square, 0..1
        best = int(np.argmax(scores))
        near = _iou(boxes, boxes[best]) > OVERLAP_IOU
        box = (boxes[near] * scores[near, None]).sum(axis=0) / scores[near].sum()
        x0, y0, x1, y1 = (box * side - np.array([ox, oy, ox, oy])).tolist()
        return Face((x0, y0, x1, y1), float(scores[best]))


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    inter = (np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
             * np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter + 1e-9)


def detector() -> FaceDetector:
    """This thread's detector (made on first use)."""
    if getattr(_local, "detector", None) is None:
        _local.detector = FaceDetector()
    return _local.detector


def find_face(img: Image.Image) -> Face | None:
    """The face in an RGB photo (this thread's detector), or None. A face that fills the whole photo
    (a tight crop) often escapes the detector, so a miss is retried once on the photo inside a border
    of its mean colour, RETRY_BORDER of its longer side wide."""
    face = detector().detect(img)
    if face is not None:
        return face
    pad = max(1, round(RETRY_BORDER * max(img.size)))
    mean = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0))
    framed = Image.new("RGB", (img.width + 2 * pad, img.height + 2 * pad), mean)
    framed.paste(img, (pad, pad))
    face = detector().detect(framed)
    if face is None:
        return None
    x0, y0, x1, y1 = face.box
    return Face((x0 - pad, y0 - pad, x1 - pad, y1 - pad), face.score)


def frame_region(face: Face) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the frame that puts `face` where training photos have theirs."""
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0)  # BlazeFace boxes are square in pixels
    width, height = side / FACE_FRAME_BOX_W, side / FACE_FRAME_BOX_H
    left = (x0 + x1) / 2 - FACE_FRAME_CENTRE[0] * width
    top = (y0 + y1) / 2 - FACE_FRAME_CENTRE[1] * height
    return round(left), round(top), round(left + width), round(top + height)


def frame(img: Image.Image, face: Face) -> Image.Image:
    """The RGB photo cropped to `frame_region(face)`; past the photo's border its edge pixels repeat."""
    left, top, right, bottom = frame_region(face)
    w, h = img.size
    x0, y0 = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
    x1, y1 = max(min(right, w), x0 + 1), max(min(bottom, h), y0 + 1)
    inside = img.crop((x0, y0, x1, y1))
    return _edge_pad(inside, max(x0 - left, 0), max(y0 - top, 0), max(right - x1, 0), max(bottom - y1, 0))


def _edge_pad(img: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """`img` with its edge rows and columns repeated outwards (numpy.pad's "edge" mode, pixel for pixel).

    Done in PIL: a one-pixel strip stretched with NEAREST is that strip repeated. Going through numpy
    instead (array, pad, back to an image) copies the whole photo three more times (docs/loadtests.md).
    """
    if not (left or top or right or bottom):
        return img
    w, h = img.size
    out = Image.new(img.mode, (left + w + right, top + h + bottom))
    out.paste(img, (left, top))
    nearest = Image.Resampling.NEAREST
    if left:
        out.paste(img.crop((0, 0, 1, h)).resize((left, h), nearest), (0, top))
    if right:
        out.paste(img.crop((w - 1, 0, w, h)).resize((right, h), nearest), (left + w, top))
    if top:  # whole rows of the widened image, so the corners repeat the corner pixels
        out.paste(out.crop((0, top, out.width, top + 1)).resize((out.width, top), nearest), (0, 0))
    if bottom:
        out.paste(out.crop((0, top + h - 1, out.width, top + h)).resize((out.width, bottom), nearest), (0, top + h))
    return out
