"""What a stored model version is (its card), and whether this code can serve it.

The card is what GET /model shows and what `glasses-train compare` and the service check before
scoring a version; every metadata key is read with a default, so older versions still describe.
"""

from __future__ import annotations

from typing import Any

from glasses import preprocessing
from glasses.config import CLASS_MAP, DEFAULT_THRESHOLD, FACE_DETECTOR_FILE, FRAMINGS, IMAGE_SIZE, POSITIVE_CLASS
from glasses.registry import RegistryError
from glasses.runtimes import available_runtimes


def model_card(bento_model: Any) -> dict[str, Any]:
    """What GET /model shows: tag, creation time, metrics, threshold, classes, preprocessing.

    Metadata is written by training/register.py; every key is read with a default so an older or
    hand-registered model still serves.
    """
    meta = dict(bento_model.info.metadata or {})
    return {
        "tag": str(bento_model.tag),
        "name": bento_model.tag.name,
        "version": bento_model.tag.version,
        "created": bento_model.info.creation_time.isoformat(),
        "threshold": float(meta.get("threshold", DEFAULT_THRESHOLD)),
        "calibration": meta.get("calibration") or None,  # glasses.calibration; None = raw probabilities
        "metrics": meta.get("metrics") or {},
        "class_map": meta.get("class_map") or CLASS_MAP,
        "positive_class": POSITIVE_CLASS,
        "preprocessing": {
            "version": meta.get("preprocessing_version", preprocessing.PREPROCESSING_VERSION),
            "image_size": int(meta.get("image_size", IMAGE_SIZE)),
            "served_version": preprocessing.PREPROCESSING_VERSION,
            "framing": meta.get("framing", "none"),  # "face": cropped around the detected face (glasses/faces.py)
        },
        "labels": dict(bento_model.info.labels or {}),
        "data_source": meta.get("data_source"),
        "data_sources": meta.get("data_sources") or [],
        "data_fingerprint": meta.get("data_fingerprint"),
        "profile": meta.get("profile"),
        "objective": meta.get("objective"),
        "hyperparameters": meta.get("hyperparameters") or {},
        "runtimes": available_runtimes(bento_model),  # model files present: "tf" (model.keras), "litert"
        "litert": meta.get("litert"),  # the conversion check recorded at registration (training/convert.py)
    }


def check_servable(card: dict[str, Any]) -> None:
    """Refuse (RegistryError) a model whose preprocessing or classes differ from what this code applies:
    the service will not serve it, `glasses-train compare` will not score it."""
    prep = card["preprocessing"]
    if prep["version"] != prep["served_version"]:
        raise RegistryError(
            f"model {card['tag']} was trained with preprocessing {prep['version']!r} but this service "
            f"applies {prep['served_version']!r}; retrain it or promote a model built with the current contract"
        )
    if prep["framing"] not in FRAMINGS:
        raise RegistryError(f"model {card['tag']} asks for framing {prep['framing']!r}; this code knows {FRAMINGS}")
    if prep["framing"] == "face" and not FACE_DETECTOR_FILE.exists():
        raise RegistryError(f"model {card['tag']} frames faces but the face detector {FACE_DETECTOR_FILE} is "
                            "missing: run scripts/setup.sh")
    if prep["image_size"] not in preprocessing.ALLOWED_SIZES:
        raise RegistryError(f"model {card['tag']} has unsupported image_size {prep['image_size']}")
    index = _positive_index(card["class_map"])
    if index is not None and index != CLASS_MAP[POSITIVE_CLASS]:
        raise RegistryError(f"model {card['tag']} has class map {card['class_map']}: its output is not "
                           f"P({POSITIVE_CLASS}) (expected {CLASS_MAP})")


def _positive_index(class_map: dict) -> int | None:
    """The label index of the positive class in a {name: index} or {index: name} map (None if absent)."""
    try:
        if POSITIVE_CLASS in class_map:
            return int(class_map[POSITIVE_CLASS])
        for key, value in class_map.items():
            if value == POSITIVE_CLASS:
                return int(key)
    except (TypeError, ValueError):
        pass
    return None

