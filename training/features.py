"""Features: a trained classifier's penultimate-layer activations, as inputs for light classifiers.

    model file (.bentomodel archive, .keras file, or a registry tag)
      -> the layer feeding the final Dense(1, sigmoid) (for the celeba models: the trunk's global
         average pooling, 384 values), averaged over the photo and its mirror image
      -> float32 (N, D) features of uint8 images, batch by batch (x / 255 as everywhere else)

TensorFlow / Keras are imported inside the functions, so a CLI can check its arguments first.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np

from glasses.config import MODEL_FILE
from glasses.files import UserError

FEATURE_BATCH = 128


def load_classifier(model: str | Path):
    """A Keras model from a `.bentomodel` archive, a `.keras` file or a registry tag (name:version)."""
    import keras

    path = Path(model)
    if path.suffix == ".bentomodel" or path.suffix == ".keras":
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        if path.suffix == ".keras":
            return keras.saving.load_model(path, compile=False)
        with tempfile.TemporaryDirectory(prefix="glasses-model-") as tmp:
            try:
                with tarfile.open(path) as tar:
                    tar.extract("./model.keras", tmp, filter="data")
            except (tarfile.TarError, KeyError, OSError) as exc:
                raise UserError(f"{path} is not a readable .bentomodel archive with model.keras: {exc}") from None
            return keras.saving.load_model(Path(tmp) / MODEL_FILE, compile=False)
    from glasses import registry

    return keras.saving.load_model(registry.get_model(str(model)).path_of(MODEL_FILE), compile=False)


def _penultimate(model):
    """(network, layer): the innermost functional network holding the final Dense and the layer feeding it."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    network = nested[-1] if nested else model
    dense = network.layers[-1]
    if not isinstance(dense, keras.layers.Dense) or dense.units != 1:
        raise UserError(f"model {model.name!r}: its last layer is not Dense(1) ({type(dense).__name__}); "
                        "cannot find the penultimate layer")
    return network, dense.input._keras_history[0]


def feature_extractor(model):
    """A function uint8 images (N, S, S, 3) -> float32 (N, D): penultimate features, mirror-averaged."""
    import keras
    import tensorflow as tf

    network, layer = _penultimate(model)
    head = keras.Model(network.inputs, layer.output)
    if network is model:
        def prep(x):
            return x
    else:  # layers before the nested network (e.g. the frozen luma conv), run as a model of their own
        before = [lay for lay in model.layers[1:] if lay is not network and not isinstance(lay, keras.layers.Average)]
        stem = keras.Sequential(before) if before else None

        def prep(x):
            return stem(x) if stem is not None else x

    @tf.function(reduce_retracing=True)
    def run(batch):
        x = prep(tf.cast(batch, tf.float32) / 255.0)
        return (head(x, training=False) + head(tf.reverse(x, axis=[2]), training=False)) / 2.0

    def extract(images: np.ndarray) -> np.ndarray:
        out = [run(tf.constant(images[i:i + FEATURE_BATCH])).numpy() for i in range(0, len(images), FEATURE_BATCH)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, layer.output.shape[-1]), np.float32)

    return extract
