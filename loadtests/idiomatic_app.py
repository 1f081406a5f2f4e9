"""The benchmark's BentoML-idiomatic peer: the service as BentoML's documentation writes it.

    BENTOML_HOME=STORE GLASSES_MODEL=TAG bentoml serve loadtests.idiomatic_app:IdiomaticService --port 8000

One `@bentoml.api(batchable=True)` over `list[PIL.Image.Image]` with default settings (BentoML parses
the multipart field `image` into PIL images and batches them with its own CORK dispatcher; one
worker). Same model (loaded by the project's one loader, so the same runtime as the service) and the
same preprocessing contract from the decoded PIL image on: the benchmark compares serving strategies
only. No strict decode, no body limit, no per-item error handling: not for production.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from PIL import Image

from glasses import preprocessing
from glasses.config import CLASS_NAMES, MODEL_ENV_VAR, SERVE_RUNTIME
from glasses.cards import model_card
from glasses.runtimes import load_classifier


@bentoml.service(name="glasses_idiomatic_peer")
class IdiomaticService:
    bento_model = bentoml.models.BentoModel(os.environ.get(MODEL_ENV_VAR, "glasses_classifier:latest"))

    def __init__(self) -> None:
        card = model_card(self.bento_model)
        self.size, self.threshold, self.tag = card["preprocessing"]["image_size"], card["threshold"], card["tag"]
        self.framing = card["preprocessing"]["framing"]
        self.classifier = load_classifier(self.bento_model, SERVE_RUNTIME, self.size)

    @bentoml.api(batchable=True)
    def predict(self, image: list[Image.Image]) -> list[dict]:
        """Images (multipart field `image`, batched across requests) -> one verdict each."""
        pixels = np.stack([preprocessing.to_uint8(img, self.size, self.framing) for img in image])
        return [{"verdict": CLASS_NAMES[int(p >= self.threshold)], "probability": float(p),
                 "threshold": self.threshold, "model": self.tag} for p in self.classifier(pixels)]
